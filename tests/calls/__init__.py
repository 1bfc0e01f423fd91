"""Tests of call-centre audio analysis (mmfusion/audio)."""
