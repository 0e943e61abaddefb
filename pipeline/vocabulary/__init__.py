"""Tokenizers for a country's languages: fertility per language, vocabulary extension of a base."""
