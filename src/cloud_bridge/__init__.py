"""Sends chosen frames to a remote R-CNN service and publishes its detections."""
