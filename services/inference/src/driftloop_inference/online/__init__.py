"""The online challenger: river learners that learn every label and answer when
their recent accuracy beats the champion's (see `arena.py`)."""
