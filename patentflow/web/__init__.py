"""`patentflow serve`: the prior-art search page over a search index (`app`)."""
