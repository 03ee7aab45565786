"""Local rules and the alarm lifecycle: raised at the edge, even offline."""
