"""Robot-side runtime: numpy, OpenCV and onnxruntime only (never torch, never rclpy)."""
