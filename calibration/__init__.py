"""Data for the model: synthetic motion clips, a real-video clip reader, and (later) calibration sets for FP16/INT8."""
