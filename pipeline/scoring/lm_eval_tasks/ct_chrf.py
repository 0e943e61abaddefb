"""chrF++ for lm-eval's translation tasks (`_translate_yaml`): lm-eval's own `chrf` metric is
chrF (no word n-grams); ours is sacrebleu's CHRF(word_order=2), the chrF++ of the field.

Copied beside the task YAMLs, so stock `lm_eval --include_path OUTPUT/tasks` gives the same
corpus-level number `countrytune eval` reports."""


def process_results(doc, results):
    """Keep (hypothesis, reference): chrF++ of a corpus is not the mean of its sentences'."""
    return {"chrf_pp": (results[0].strip(), doc["reference"])}


def corpus_chrf_pp(items):
    from sacrebleu.metrics import CHRF

    hypotheses, references = zip(*items)
    return CHRF(word_order=2).corpus_score(list(hypotheses), [list(references)]).score
