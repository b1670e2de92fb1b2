"""Turning a model into OpenVINO IR: fetch, convert, quantize, verify, publish."""
