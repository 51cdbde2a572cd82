"""Data: the GSM8K-Aug line format and its parsers (format.py), the synthetic task (synthetic.py), GSM8K (gsm8k.py)."""
