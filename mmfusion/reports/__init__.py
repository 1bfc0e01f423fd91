"""Report writing: prompts rendered from templates (fenced inputs, few-shot, compression), findings, generators,
the Report, the cross_modal decoder and its training, report metrics and A/B tests of prompt variants."""
