"""Heuristic quality filters from the papers that made the big web corpora: Gopher (MassiveText),
C4 and FineWeb. Each rule carries the paper's threshold, can be switched off on its own, and
names itself in the removal reason. They were tuned on Common Crawl, so by default they only
look at the `web` domain.
"""
