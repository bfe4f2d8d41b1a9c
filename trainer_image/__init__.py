"""Ada-Segment trainer: data, models, PQ, weighted training, worker and transfer runs."""
