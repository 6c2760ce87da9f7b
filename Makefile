.PHONY: check test bench assets

check:
	ruff check umarvel_st tests benchmarks
	ruff format --check umarvel_st tests benchmarks

test:
	HF_HUB_OFFLINE=1 python -m pytest -q

bench:
	python benchmarks/encode_speed.py

# The embedded default and its re-ranker ship copies of the modeling code (they must load without umarvel_st);
# refresh them after a change.
assets:
	python -c "import umarvel_st.modeling.remote_code as r, umarvel_st.modeling.encoder as e, umarvel_st.modeling.pooling as p; [r.copy_source(m.__file__, 'umarvel_st/assets/umarvel-demo') for m in (e, p)]"
	python -c "import umarvel_st.modeling.remote_code as r, umarvel_st.modeling.reranker as k; r.copy_source(k.__file__, 'umarvel_st/assets/umarvel-demo-reranker')"
