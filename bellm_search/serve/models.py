"""The API's request and response bodies (pydantic). Imported by the serve modules only, inside
functions, so ``bellm-search --help`` never loads pydantic.

No ``from __future__ import annotations``: FastAPI reads these annotations at route definition.
"""
from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

Scalar = Union[StrictStr, StrictInt, StrictFloat, StrictBool]


# ----------------------------------------------------------------------------- requests
class Texts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Optional[StrictStr] = Field(None, description="One text (or use `texts`).")
    texts: Optional[list[StrictStr]] = Field(None, description="Several texts: one result per text, in order.")

    @model_validator(mode="after")
    def _one_of(self) -> "Texts":
        if (self.text is None) == (self.texts is None):
            raise ValueError("give 'text' or 'texts' (one of them, not both)")
        if self.texts is not None and not self.texts:
            raise ValueError("'texts' is empty")
        return self

    def given(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class QueryIn(Texts):
    k: int = Field(10, ge=1, description="Results per text.")
    where: Optional[dict[str, Scalar]] = Field(None, description="Metadata filter: field -> value (all must match).")
    nprobe: Optional[int] = Field(None, ge=1, description="IVF lists to visit (default from the collection).")


class EmbedIn(Texts):
    pass


class NearDuplicatesIn(Texts):
    threshold: Optional[float] = Field(
        None, ge=-1.0, le=1.0,
        description="Cosine threshold (pure cosine). Default: the calibrated pair model (cosine and lexical "
                    "features -> a probability, each hit with its `probability`), only for the encoder it was "
                    "calibrated for; any other encoder must give a threshold.")
    k: int = Field(10, ge=1, description="Neighbours examined per text.")
    nprobe: Optional[int] = Field(None, ge=1)


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra={"example": {"id": "p1", "text": "hello", "lang": "en"}})
    id: Union[Annotated[StrictStr, Field(min_length=1)], StrictInt] = Field(description="Source id (unique).")
    text: StrictStr


class DocumentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn] = Field(description="Records: id, text, any other fields are metadata.")
    skip_near_duplicates: Optional[float] = Field(
        None, ge=-1.0, le=1.0, description="Record a document as a duplicate when its cosine to a stored one is >= this.")
    near_duplicates: StrictBool = Field(
        False, description="Record a document as a duplicate when the calibrated pair model says so (as `ingest "
                           "--near-duplicates`); not with skip_near_duplicates.")

    @model_validator(mode="after")
    def _one_rule(self) -> "DocumentsIn":
        if self.near_duplicates and self.skip_near_duplicates is not None:
            raise ValueError("give 'near_duplicates' (the calibrated pair model) or 'skip_near_duplicates' (a cosine), "
                             "not both")
        return self


# ----------------------------------------------------------------------------- responses
class HitOut(BaseModel):
    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    copies: int = Field(0, description="Exact copies (same normalised text) of this document that also match, "
                                      "collapsed under it.")


class ResultsOut(BaseModel):
    results: list[list[HitOut]] = Field(description="One list of hits per input text, best first.")


class NearHitOut(HitOut):
    probability: Optional[float] = Field(
        None, description="P(duplicate) from the calibrated pair model (null with a request threshold: pure cosine).")


class NearDuplicatesOut(BaseModel):
    results: list[list[NearHitOut]] = Field(description="One list per input text: its near duplicates (empty: none).")
    threshold: float = Field(description="The request's cosine threshold, or the pair model's probability threshold.")
    threshold_source: str = Field(description="'request' (pure cosine), or 'calibration' (the calibrated pair model "
                                              "for this encoder).")


class EmbedOut(BaseModel):
    dim: int
    vectors: list[list[float]] = Field(description="L2-normalised float32 vectors, one per text.")


class IngestOut(BaseModel):
    added: int
    skipped_known: int
    exact_duplicates: int
    near_duplicates: int
    documents: int = Field(description="Live documents in the collection after this write.")


class DeleteOut(BaseModel):
    id: str
    deleted: bool


class ErrorOut(BaseModel):
    error: str
    detail: Optional[list[dict[str, Any]]] = None
