"""Measurement: quality metrics, held-out evaluation, the bench with its rows and report,
timing, and the Hugging Face GPT-2 export the bench compares against."""
