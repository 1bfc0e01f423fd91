"""Call-centre audio analysis: streaming transcription, speakers by channel, metrics, labels, compliance."""
