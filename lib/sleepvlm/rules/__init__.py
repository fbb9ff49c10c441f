"""AASM scoring rules as data (:mod:`.table`), waveform detectors (:mod:`.detectors`), the
per-epoch evidence a stager needs (:mod:`.evidence`) and detector validation
(:mod:`.validation`)."""
