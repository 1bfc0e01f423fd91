"""Tests of report generation and prompt engineering."""
