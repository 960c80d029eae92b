"""Researcher, checker, engineer (trainer + debugger), analyst, judge, LLM backends and the loop."""
