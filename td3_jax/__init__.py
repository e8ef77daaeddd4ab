"""td3_jax: TD3 with separate actor and critic CNNs for visual lane keeping, in JAX."""
