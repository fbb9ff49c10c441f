"""sleepvlm: the helper library behind the sleepvlm book (data, signal processing, rules, models, metrics)."""

__version__ = "0.1.0"
