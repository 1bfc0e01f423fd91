"""Real cameras: sources (RTSP, HTTP MJPEG, V4L2, files), their StreamInspect calls, defect records, the live page."""
