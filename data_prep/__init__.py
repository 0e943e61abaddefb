"""data_prep: read a country's raw corpora, clean them, and write shards with a data card.

Every step follows one contract (`data_prep.step.Step`): it takes documents, returns each one
kept or dropped with a reason; the base class counts and writes the drops as rejects.
"""
