"""`make run`: the embedded models in-process, then a loopback server with a camera stream and a call."""
