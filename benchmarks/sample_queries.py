"""Shopper-style queries shared by the serving benchmarks."""

QUERIES = [
    "red dress",
    "mens black tshirt",
    "running shoes",
    "women handbag",
    "blue jeans",
    "casual shirt men",
    "analog watch",
    "sunglasses",
    "white sneakers",
    "kurta for women",
    "leather belt",
    "sports shoes men",
    "girls top",
    "formal shoes",
    "backpack",
    "navy blue shirt",
    "flip flops",
    "track pants",
    "perfume",
    "summer dress floral",
]
