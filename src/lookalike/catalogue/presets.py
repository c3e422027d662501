"""Schemas of catalogues we know by shape, so the main job needs no configuration on them."""

from lookalike.catalogue.schema import CatalogueSchema

FASHION_PRODUCTS = CatalogueSchema(
    id_field="id",
    image_template="images/{id}.jpg",
    single_fields=["gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage"],
    text_field="productDisplayName",
    category_field="subCategory",
)
