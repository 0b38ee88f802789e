"""Foundations every stage uses: cache and data folders (`paths`), atomic writes and verified reads
(`store`), input checks (`checks`), the environment checks made before work (`environment`), and the
recorded settings of a result (`settings`)."""
