"""The collect stage: planning cameras in a space and rendering its dataset splits."""
