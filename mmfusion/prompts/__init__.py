"""Report generation and prompt engineering: templates, few-shot examples, generators, metrics, A/B tests."""
