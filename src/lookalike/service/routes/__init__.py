"""One APIRouter per area of the API; `create_app` includes them and attaches the token guards."""
