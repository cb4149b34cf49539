"""The static HTML leaderboard (render.py) and its page (site/)."""
