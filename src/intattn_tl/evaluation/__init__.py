"""EasyEdit's metrics (Edit Succ., Generalization, Portability, Locality, Fluency), batched: `metrics`."""
