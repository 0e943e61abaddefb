"""The country language-ID model now lives in the foundation (countrytune/langid_model.py), so
the scoring library can judge the language of generated answers with prep's own model; this
name stays for prep and its callers."""

from countrytune.langid_model import (SCORE_CHUNK_CHARS, FeatureSpec, LangIdModel, batch_features,
                                      clean_for_langid)

__all__ = ["SCORE_CHUNK_CHARS", "FeatureSpec", "LangIdModel", "batch_features", "clean_for_langid"]
