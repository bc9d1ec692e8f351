"""Whole workflows built from the library: the Gradio page, the demo, the benchmark harness."""
