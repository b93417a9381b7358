"""What the harness publishes: the leaderboard, figures, and the scale and speed reports."""
