"""Generation of new molecules from pure noise (MoreRed's adaptive schedule or DDPM's fixed one)
and the metrics that judge them: :mod:`.metrics` (stability, validity, uniqueness, novelty),
:mod:`.generate` (compositions, noise, sampling), :mod:`.benchmark` (DDPM vs MoreRed)."""
