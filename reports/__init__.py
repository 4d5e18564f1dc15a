"""Views of the databases and the searches for a person: what is stored (show), the scheme-space
plot (space_plot), a distributed build's progress (build_status), and the figure helpers every
benchmark plot uses (figure)."""
