"""Figures drawn from results CSVs only, one module per figure, plus shared style helpers."""
