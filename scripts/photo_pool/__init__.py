"""The parts of scripts/fetch_photo_pool.py, one concern each.

rules (photo_pool_rules.toml, read and checked), selection (which files of a package are photos), licences
(copyright files and upstream credits), manifest (MANIFEST.tsv / EXCLUDED.tsv rows), apt (apt-get and dpkg),
dedup (near-copies and benchmark look-alikes) and tables (the printed summary and docs/data.md's tables).
"""
