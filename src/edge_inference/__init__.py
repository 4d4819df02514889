"""Local detection on the robot or edge computer (ultralytics YOLO)."""
