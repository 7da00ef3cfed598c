"""Model builders, local weight loading and the model package."""
