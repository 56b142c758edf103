"""Plain-Python helpers of the BIDS App (BIDS queries, derivative naming, atomic writes).

Nothing here imports nipype, so the helpers can be tested (and reused) on their own.
"""
