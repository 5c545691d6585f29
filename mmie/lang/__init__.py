"""Languages: language identification, scripts, transliteration and the optional LLM judge."""
