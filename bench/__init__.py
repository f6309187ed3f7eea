"""Benchmarks of the Emote pipeline on the machine they run on.

``python -m bench.run`` (or ``make bench``) generates a minute of speech with
the offline text-to-speech engine, times every stage of the offline render
(portrait analysis, motion generation, rendering, also pinned to one core,
H.264 encoding, audio decoding) on two public-domain portraits, times the
real ``emote render`` command end to end, and writes the numbers with the
machine they came from into ``BENCHMARKS.md``. :mod:`bench.speech` makes the
speech, :mod:`bench.stages` measures the stages and :mod:`bench.run` runs
everything and writes the report.
"""
