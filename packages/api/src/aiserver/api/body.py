"""Request bodies decoded by msgspec straight into their Struct, in one call.

Litestar's default path for a `data: SomeStruct` parameter decodes the JSON into Python objects,
then converts them into the Struct inside its signature model: two passes and a layer of
bookkeeping that cost more than a whole cost calculation. `StructBody` is a Litestar DTO that
decodes the bytes with one `msgspec.json.Decoder` per type, with the same lax rules (`"5"` and
`1.0` are read as the integer 5 and 1, as before) and the same errors: a 400 for malformed JSON,
a 422 naming the field (`usage.input_tokens`, `requests[3].model`, `data` for the whole body).
The OpenAPI document shows the Struct itself, as it would without the DTO.

    @post("/calculate", dto=StructBody[CostRequest], return_dto=None)
    async def calculate(self, data: JSONBody[CostRequest]) -> CostResponse: ...
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import msgspec
from litestar.dto import AbstractDTO, DTOConfig, DTOFieldDefinition
from litestar.exceptions import ClientException, ValidationException
from litestar.typing import FieldDefinition

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.dto._backend import DTOBackend
    from litestar.openapi.spec import Reference, Schema

T = TypeVar("T")

#: How Litestar names the body in its validation errors, and so do we.
BODY_FIELD = "data"


def _field(path: str) -> str:
    """`$.usage.input_tokens` -> `usage.input_tokens`; `$[2]` -> `[2]`; `$` -> `data`."""
    field = path.removeprefix("$").removeprefix(".")
    return field or BODY_FIELD


def decode_struct(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode `body` with `decoder`, raising Litestar's exceptions for a bad body."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        message, at, path = text.rpartition(" - at `")
        if not at:
            message, path = text, "$`"
        field = _field(path.removesuffix("`"))
        raise ValidationException(
            detail=f"Validation failed for POST: {message}",
            extra=[{"message": message, "key": field, "source": "body"}],
        ) from None
    except msgspec.DecodeError as exc:
        raise ClientException(str(exc)) from None
    except UnicodeDecodeError as exc:  # msgspec's report of invalid UTF-8 inside a string
        raise ClientException(f"JSON is malformed: invalid UTF-8 ({exc.reason})") from None
    except RecursionError:
        raise ClientException("JSON is malformed: nested too deeply") from None


class StructBody(AbstractDTO[T], Generic[T]):
    """A DTO that only decodes: the request body into `model_type` (see the module docstring).

    Use it with `return_dto=None`; it has no backend, so it cannot encode a response.
    """

    config: ClassVar[DTOConfig] = DTOConfig()
    _decoders: ClassVar[dict[Any, msgspec.json.Decoder[Any]]] = {}

    @classmethod
    def _decoder(cls) -> msgspec.json.Decoder[T]:
        decoder = cls._decoders.get(cls.model_type)
        if decoder is None:
            decoder = cls._decoders[cls.model_type] = msgspec.json.Decoder(
                cls.model_type, strict=False
            )
        return decoder

    def decode_bytes(self, value: bytes) -> T:
        return decode_struct(value, self._decoder())

    def decode_builtins(self, value: dict[str, Any]) -> T:
        return msgspec.convert(value, self.model_type, strict=False)

    @classmethod
    def generate_field_definitions(
        cls, model_type: type[Any]
    ) -> Generator[DTOFieldDefinition, None, None]:
        yield from ()  # no transfer model: msgspec decodes the type itself

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False

    @classmethod
    def create_for_field_definition(
        cls,
        field_definition: FieldDefinition,
        handler_id: str,
        backend_cls: type[DTOBackend] | None = None,
    ) -> None:
        if field_definition.name != "data":
            raise TypeError("StructBody only decodes request bodies: set return_dto=None")
        cls._decoder()  # built at registration, not on the first request

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: SchemaCreator
    ) -> Reference | Schema:
        return schema_creator.for_field_definition(
            FieldDefinition.from_annotation(
                cls.model_type, kwarg_definition=field_definition.kwarg_definition
            )
        )
