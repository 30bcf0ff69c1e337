"""Speech labels: who speaks when on each leg, and what a team filters on (SNR, music)."""
