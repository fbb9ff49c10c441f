"""sleepvlm: the helper library behind the sleepvlm book (data, signals, rules, models, metrics)."""

__version__ = "0.1.0"
