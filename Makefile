.PHONY: check test bench

check:
	ruff check umarvel_st tests benchmarks
	ruff format --check umarvel_st tests benchmarks

test:
	HF_HUB_OFFLINE=1 python -m pytest -q

bench:
	python benchmarks/encode_speed.py
