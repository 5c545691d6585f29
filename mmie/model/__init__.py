"""Models: loading, generation, likelihoods, hooks and memory back-off, the demo model, Gemma."""
