"""MoreRed: molecular relaxation by reverse diffusion with time-step prediction."""

__version__ = "0.1.0"
