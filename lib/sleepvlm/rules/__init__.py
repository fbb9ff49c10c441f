"""AASM scoring rules as data (:mod:`.table`), waveform detectors (:mod:`.detectors`), the
per-epoch evidence a stager needs (:mod:`.evidence`), detector validation (:mod:`.validation`),
a transparent rule-based stager (:mod:`.stager`) and rule-based quality control of scored labels
(:mod:`.quality`)."""
